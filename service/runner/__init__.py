"""Running the flow: the one path every run takes (``runs``: claim, start, execute, record,
events), executed as a flow run of the deployment (``flowruns``) in a process that holds the
home for its life (``session``): the daemon, or ``retrain run``, or a hand-off to a running
daemon (``handoff``). Retention keeps the work per run constant."""
