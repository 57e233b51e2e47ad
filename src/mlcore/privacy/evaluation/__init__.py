"""Measuring detection: span-matching precision / recall / F2 (`evaluate`), the synthetic corpus the
recognizers were developed on (`synthetic`), and held-out data they were not written against."""
