"""The shared core: what both the flow and the service speak. Errors a user can cause, the
one way to write a file atomically, the records that cross step boundaries and the
settings of the pipeline's steps. Imports neither ``flows`` nor ``service``."""

from core.ast_guard import serialize_ast_construction

# Before anything else of the process parses with ``ast`` on threads (see core.ast_guard).
serialize_ast_construction()
