"""The 2020 intelligence market (market.md): peers that learn the value of their neighbours."""
