"""Networks: the CaffeNet-BN trunk and the ordering heads (design §4)."""
