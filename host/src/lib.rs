//! A GGUF inference engine: GGUF reader and writer, quantization formats, model config and weight
//! mapping, tokenizer, a CPU reference backend and a CUDA backend with kernels written in Rust.

pub mod backend;
pub mod cli;
pub mod cpu;
pub mod cuda;
pub mod fetch;
pub mod generate;
pub mod gguf;
pub mod kernels;
pub mod model;
pub mod quant;
pub mod sample;
pub mod tokenizer;
