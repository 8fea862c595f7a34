"""The shared core: what both the flow and the service speak. Errors a user can cause, the
one way to write a file atomically, the records that cross step boundaries and the
settings of the pipeline's steps. Imports neither ``flows`` nor ``service``."""
