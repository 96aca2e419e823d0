"""Text generation backends (llama.cpp on CPU by default) behind one protocol."""
