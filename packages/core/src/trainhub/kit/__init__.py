"""The plugin-author kit: media (sample grids, PNG, wav), image quality, distillation, the plugin scaffold (the pytest fixtures are trainhub.testing)."""
