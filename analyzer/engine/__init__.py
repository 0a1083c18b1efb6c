"""The engine room: GL-AM (local and global maps), LAM, the literal GLAM.md reference, and
their parts (segmented graph, backward passes, map algebra, texture objective, fused
kernels, metrics, device choice). Imports only ``glam.errors`` and ``glam.importers``."""
