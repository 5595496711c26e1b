"""smartbrush.model: the SmartBrush UNet (9 in, 5 out, precision level as class embedding), the inputs
training and sampling both feed it, and `SmartBrushPipeline`. Uses the formats only (no Beam)."""
