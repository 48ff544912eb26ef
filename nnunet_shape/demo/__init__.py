"""``make demo``: paper 000's Table 1 in miniature on synthetic knee phantoms."""
