"""The daemon, the intake of files and the command line of the retraining service."""
