"""Runtime guards that sit on every request: input and output scanning (`guardrails`), the bounded window
scanner for streamed text (`streaming`), and the prompt-injection check (`injection`, reading the text through
`normalize` and `decode`; labelled evaluation set in `data`)."""
