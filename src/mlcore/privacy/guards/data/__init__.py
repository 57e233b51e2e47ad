"""Labelled messages for evaluating the prompt-injection check (`benign`, `attacks`, `eval_set`)."""
