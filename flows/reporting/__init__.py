"""What a run shows: Prefect artifacts (``artifacts``), the history chart and table
(``report``), and progress for whoever runs the flow in this process (``progress``)."""
