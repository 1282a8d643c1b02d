"""What a competition defines: its metric, its RLE and its submission file."""
