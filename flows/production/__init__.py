"""The production loop: scoring unlabelled batches into predictions/ and the prediction log
(``scoring``, ``predlog``), joining late labels with it for the production metric of every
version and new training rows (``labels``), and the flow's runs of both (``run``)."""
