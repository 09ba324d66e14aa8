"""Labeling: the labels dock and its panels, map tools, Segment Anything, the labels layer and its class schema."""
