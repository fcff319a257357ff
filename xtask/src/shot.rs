//! The simulation report, rendered by headless Chromium (Debian's `chromium`) into a
//! screenshot, and the screenshot checked for the charts' own colours: proof that the inline
//! SVG draws in a browser, not only that it parses.

use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use crate::util::{apt_install, have, is_root};

/// The browser's window (the screenshot's size): wide enough for the grid, tall enough to
/// reach the ladder's charts at the bottom of the report.
const WINDOW: (u32, u32) = (1600, 16000);

/// The charts' green (`#74c476`: bars, direct stretches, checked points within the band).
const GREEN: [u8; 3] = [0x74, 0xc4, 0x76];
/// The 3σ band: `#9ecae1` at 45 % over white.
const BAND: [u8; 3] = [211, 231, 241];
/// At least this many pixels of each, or the charts did not draw.
const MIN_PIXELS: usize = 2000;

/// Renders `dir/report.html` into `dir/report.png` and checks it; SKIPs (Ok) when Chromium is
/// missing and cannot be installed.
pub fn check_report(dir: &Path, install: bool) -> Result<()> {
    if !have("chromium") && install && is_root() && !apt_install(&["chromium"]) {
        println!("xtask: apt-get install chromium failed");
    }
    if !have("chromium") {
        println!(
            "SKIPPED report screenshot: package chromium is not installed{}",
            if is_root() {
                ""
            } else {
                " (run as root to install it)"
            }
        );
        return Ok(());
    }
    let html = dir
        .join("report.html")
        .canonicalize()
        .context("report.html")?;
    let png = dir.join("report.png");
    let profile = dir.join("chromium-profile");
    let _ = std::fs::remove_dir_all(&profile);
    let _ = std::fs::remove_file(&png);
    // As the machine notes advise: no sandbox as root, and no background connections (the
    // network is closed; the report fetches nothing).
    // A browser that hangs (even on its way out) is killed: 3 minutes, then SIGKILL.
    let status = Command::new("timeout")
        .args(["-k", "10", "180"])
        .arg("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            // Colours as written, so the check can match them exactly.
            "--force-color-profile=srgb",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("--window-size={},{}", WINDOW.0, WINDOW.1))
        .arg(format!("--screenshot={}", png.display()))
        .arg(format!("file://{}", html.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .context("running chromium")?;
    let _ = std::fs::remove_dir_all(&profile);
    if !status.success() || !png.is_file() {
        bail!(
            "chromium made no screenshot of {} ({status})",
            html.display()
        );
    }
    let (green, band) = count_colours(&png)?;
    println!(
        "xtask: report screenshot {}: {green} chart-green and {band} band pixels",
        png.display()
    );
    if green < MIN_PIXELS || band < MIN_PIXELS {
        bail!(
            "the report's charts did not draw in Chromium ({green} green and {band} band pixels, \
             at least {MIN_PIXELS} each expected; see {})",
            png.display()
        );
    }
    Ok(())
}

/// Pixels of the charts' green (exact) and of the band (within 3 per channel: blending rounds).
fn count_colours(png: &Path) -> Result<(usize, usize)> {
    let file = std::fs::File::open(png)?;
    let mut decoder = png::Decoder::new(std::io::BufReader::new(file));
    decoder.set_transformations(png::Transformations::normalize_to_color8());
    let mut reader = decoder.read_info()?;
    let mut buf = vec![0; reader.output_buffer_size().context("image too large")?];
    let info = reader.next_frame(&mut buf)?;
    let step = match info.color_type {
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        other => bail!("unexpected screenshot colour type {other:?}"),
    };
    let near = |p: &[u8], c: [u8; 3]| (0..3).all(|i| p[i].abs_diff(c[i]) <= 3);
    let (mut green, mut band) = (0, 0);
    for p in buf[..info.buffer_size()].chunks_exact(step) {
        if p[..3] == GREEN {
            green += 1;
        } else if near(p, BAND) {
            band += 1;
        }
    }
    Ok((green, band))
}
