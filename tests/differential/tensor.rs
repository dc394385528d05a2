//! Device storage of `Tensor`: every dtype round-trips host → device → host bit for bit,
//! device tensors refuse host accessors with `WrongDevice`, and a wgpu tensor feeds a
//! device-resident op through its typed buffer. SKIPPED without the backend (fails with
//! `LOWBIT_REQUIRE`).

use half::{bf16, f16};
use lowbit_kernels::tensor::Tensor;
use lowbit_kernels::testing::{self, Rng};
use lowbit_kernels::{BackendKind, LowbitError};

/// One tensor of each dtype, odd sizes included (byte lengths not a multiple of 4).
fn samples() -> Vec<Tensor> {
    let mut rng = Rng::new(0x7E45);
    let f = rng.normals(3 * 5 * 7, 3.0);
    vec![
        Tensor::from_slice(&[3, 5, 7], &f).unwrap(),
        Tensor::from_vec(&[7], f[..7].iter().map(|&x| f16::from_f32(x)).collect()).unwrap(),
        Tensor::from_vec(&[5], f[..5].iter().map(|&x| bf16::from_f32(x)).collect()).unwrap(),
        Tensor::from_vec(&[2, 3], vec![i32::MIN, -1, 0, 1, 255, i32::MAX]).unwrap(),
        Tensor::from_vec(&[1, 1, 1, 3], vec![-128i8, 0, 127]).unwrap(),
        Tensor::from_vec(&[5], vec![0u8, 1, 128, 254, 255]).unwrap(),
        Tensor::from_vec(&[2, 2], vec![0xDEAD_BEEFu32, 0, 1, u32::MAX]).unwrap(),
    ]
}

fn check_device_tensor(host: &Tensor, dev: &Tensor, kind: BackendKind) {
    assert_eq!(dev.backend(), kind);
    assert!(!dev.is_host());
    assert_eq!(dev.dims(), host.dims());
    assert_eq!(dev.dtype(), host.dtype());
    assert!(dev.device().starts_with(kind.as_str()), "{}", dev.device());
    assert!(matches!(
        dev.as_slice::<f32>(),
        Err(LowbitError::WrongDevice { .. })
    ));
    assert!(matches!(
        dev.try_as_bytes(),
        Err(LowbitError::WrongDevice { .. })
    ));
    assert!(dev.as_bytes().is_empty());
    let back = dev.to_host().unwrap();
    assert!(back.is_host());
    assert_eq!(&back, host, "{} round trip", host.dtype());
    assert_eq!(back.as_bytes(), host.as_bytes());
    // A clone shares the buffer (equal); a reshape keeps the device storage.
    assert_eq!(dev.clone(), *dev);
    let flat = dev.clone().reshape(&[host.len()]).unwrap();
    assert_eq!(flat.to_host().unwrap().as_bytes(), host.as_bytes());
}

#[cfg(feature = "cuda")]
#[test]
fn cuda_round_trip() {
    use lowbit_kernels::backend::cuda::CudaDevice;
    let dev = match CudaDevice::new(0) {
        Ok(d) => d,
        Err(e) => {
            if let Err(msg) = testing::skip_or_fail(BackendKind::Cuda, &e.to_string()) {
                panic!("{msg}");
            }
            return;
        }
    };
    for host in samples() {
        let d = host.to_device_cuda(&dev).unwrap();
        check_device_tensor(&host, &d, BackendKind::Cuda);
        assert_eq!(d.cuda_bytes(&dev).unwrap().len(), host.size_bytes());
        // Already there: shared, not copied.
        assert_eq!(d.to_device_cuda(&dev).unwrap(), d);
        assert!(matches!(
            host.cuda_bytes(&dev),
            Err(LowbitError::WrongDevice { .. })
        ));
    }
}

#[cfg(feature = "wgpu")]
#[test]
fn wgpu_round_trip() {
    use lowbit_kernels::backend::wgpu::{WgpuDevice, WgpuOptions};
    let dev = match WgpuDevice::new(WgpuOptions::default()) {
        Ok(d) => d,
        Err(e) => {
            if let Err(msg) = testing::skip_or_fail(BackendKind::Wgpu, &e.to_string()) {
                panic!("{msg}");
            }
            return;
        }
    };
    for host in samples() {
        let d = host.to_device_wgpu(&dev).unwrap();
        check_device_tensor(&host, &d, BackendKind::Wgpu);
        assert_eq!(d.to_device_wgpu(&dev).unwrap(), d);
        assert!(matches!(
            host.wgpu_buffer::<f32>(&dev),
            Err(LowbitError::WrongDevice { .. })
        ));
    }
    // The typed view is the same memory: download it directly.
    let words = Tensor::from_vec(&[3], vec![1u32, 0x8080_8080, 7]).unwrap();
    let d = words.to_device_wgpu(&dev).unwrap();
    let buf = d.wgpu_buffer::<u32>(&dev).unwrap();
    assert_eq!(dev.download(&buf).unwrap(), vec![1u32, 0x8080_8080, 7]);
    assert!(matches!(
        d.wgpu_buffer::<i32>(&dev),
        Err(LowbitError::InvalidArgument { .. })
    ));
}
