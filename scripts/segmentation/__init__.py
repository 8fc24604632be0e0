"""Downstream brain-tumour segmentation: does a synthesized contrast segment like the real one?"""
