"""Networks: the CaffeNet-BN trunk and the ordering heads (SPEC 4)."""
