"""MaskForge QGIS plugin entry point."""


def classFactory(iface):  # noqa: N802 (QGIS's name)
    from .plugin import MaskForgePlugin
    return MaskForgePlugin(iface)
