//! (skeleton)
use super::*;
pub struct NemoSource;
impl NemoSource {
    pub fn open(_path: &Path) -> Result<NemoSource> { todo!() }
}
impl CheckpointSource for NemoSource {
    fn path(&self) -> &Path { todo!() }
    fn format(&self) -> String { todo!() }
    fn config(&self) -> &LlamaConfig { todo!() }
    fn tensors(&self) -> Vec<TensorInfo> { todo!() }
    fn load(&self, _name: &str) -> Result<Tensor> { todo!() }
    fn tokenizer(&self) -> Result<Tokenizer> { todo!() }
    fn default_add_bos(&self) -> bool { false }
    fn default_stop_strings(&self) -> Vec<String> { vec!["<extra_id_1>".into()] }
    fn details(&self) -> Vec<(String, String)> { vec![] }
}
