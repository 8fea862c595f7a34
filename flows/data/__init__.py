"""The data steps: planning a run (``plan``), cutting files into partitions and cleaning
them into cached parquet (``preprocess``, ``schema``, ``features``), and the one layer every
later step reads the window's rows through (``window``)."""
