"""What collect computes, draws and prints from result files; never imports TensorFlow."""
