"""Code shared by the model-preparation pipeline and the serving API (no TensorFlow here)."""
