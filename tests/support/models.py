"""Tiny random-weight targets now live in `jetspec.testing.models` (plugin authors use them too)."""

from jetspec.testing.models import EOS, FAMILIES, TinyDecoder, tiny_decoder, tiny_hf_model, tiny_target  # noqa: F401
