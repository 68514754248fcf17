"""Demo and test support: generated VOC-layout data, a private local Ray head, overlay pictures."""
