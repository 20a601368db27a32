import sys

sys.exit(3)  # a plugin that exits on import: reported like any broken plugin, the others keep working
