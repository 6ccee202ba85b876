"""Training schemes beside DeMo (schemes.md): DiLoCo (§2) and SparseLoCo (§3).

`quant` (2-bit LUT and int8 quantisers) and `pack` (12-bit indices, 2-bit codes) are the
shared primitives; `sparseloco` and `diloco` hold each scheme's pure, jittable math. The
seam that chooses a scheme by name is wired elsewhere. Submodules are not imported here,
so `jaxnet.config` can import a scheme's config section without pulling in the others.
"""
