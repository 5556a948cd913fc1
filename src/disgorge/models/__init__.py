"""Model families (``registry.py``, ``families.py``, ``language.py``), the safetensors model store and model cards.

Nothing is imported here, so reading the store (``models.store``) does not load torch; the families register
themselves when :mod:`disgorge.models.families` is imported (the classification task does).
"""
