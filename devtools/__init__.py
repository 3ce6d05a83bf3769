"""Dev-only tooling: the local control plane, the real node, the demo and the tiny model.

Not part of the product: the wheel and both images leave it out; it runs from a checkout.
"""
