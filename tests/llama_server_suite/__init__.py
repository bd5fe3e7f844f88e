"""llama.cpp's own server test suite, run against hychat and native llama-server on the embedded model."""
