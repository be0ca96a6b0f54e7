fn main() -> anyhow::Result<()> {
    let obj = gateway_user::ebpf::gateway_object()?;
    println!("embedded object: {} bytes", obj.len());
    Ok(())
}
