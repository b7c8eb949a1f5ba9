"""Model -> bundle exporters."""
