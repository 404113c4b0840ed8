"""Examples: python -m gru_native.examples.char_lm"""
