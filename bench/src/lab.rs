//! 2. Lab line rate: placeholder replaced below.
use anyhow::Result;
use crate::report::LabRate;
pub fn run(_frames: u32, _rounds: usize) -> Result<(Vec<LabRate>, Vec<String>)> {
    Ok((Vec::new(), Vec::new()))
}
