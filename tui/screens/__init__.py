"""Console screens: sessions list, modals, panes."""
