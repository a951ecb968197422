"""What runs on the Raspberry Pi or Jetson: numpy, OpenCV and one runtime. Never imports torch."""
