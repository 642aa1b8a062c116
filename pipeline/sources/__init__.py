"""Where raw data comes from: dataset layouts, scanning, download, safe extraction, config overlays."""
