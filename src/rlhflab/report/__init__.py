"""Self-contained HTML run reports (`rlhflab report`) and the SVG plots they embed."""
