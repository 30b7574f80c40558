//! GGUF block formats (filled in by the quant work).
