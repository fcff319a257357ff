//! `burrow genkey` and `burrow pubkey`, like `wg genkey` and `wg pubkey`.

use anyhow::{Context, Result};

/// Prints a new private key (base64).
pub fn genkey() -> Result<()> {
    let mut rng = <rand_chacha::ChaCha20Rng as rand_chacha::rand_core::SeedableRng>::from_os_rng();
    println!(
        "{}",
        burrow_wg::PrivateKey::generate(&mut rng).expose_base64()
    );
    Ok(())
}

/// Reads a private key on stdin and prints its public key.
pub fn pubkey() -> Result<()> {
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    let key =
        burrow_wg::PrivateKey::from_base64(&line).context("reading a private key on stdin")?;
    println!("{}", key.public_key());
    Ok(())
}
