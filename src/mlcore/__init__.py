"""mlcore: the mechanics of modern LLM engineering, from scratch and via the ecosystem.

Sub-packages (one concept each): ``attention``, ``positional``, ``tokenizer``, ``model``,
``training``, ``quant``, ``inference``, ``finetune``, ``privacy`` and ``bench``.
"""

__version__ = "0.1.0"
