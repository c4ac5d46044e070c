"""Models: backbones, necks, decode heads, losses and segmentors."""
