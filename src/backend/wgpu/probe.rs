//! Adapter enumeration into [`WgpuCaps`], and whether `dot4I8Packed` is native.
//!
//! wgpu 30 has no public flag for "dot4I8Packed is native": `Instance::wgsl_language_features`
//! lists `Packed4x8IntegerDotProduct` whenever naga implements the builtin (always, lowered
//! natively or by polyfill). What decides the lowering is wgpu-hal's Vulkan private capability
//! `shader_integer_dot_product`: when the device reports `shaderIntegerDotProduct`
//! (Vulkan 1.3 or `VK_KHR_shader_integer_dot_product`), wgpu enables it and hands naga the
//! `DotProduct*` SPIR-V capabilities, and naga emits `OpSDot` with the packed 4x8 format;
//! otherwise naga unpacks. We ask the Vulkan driver the same question through ash. Other
//! backends report `false` (Metal and GL always unpack; DX12 may use `dot4add_i8packed` on
//! shader model 6.4, which this probe does not try to tell).

use crate::caps::{BackendProbe, WgpuAdapterCaps, WgpuCaps};

/// Every adapter of the instance (`WGPU_BACKEND` honoured).
pub fn probe() -> BackendProbe<WgpuCaps> {
    let instance = super::device::instance(None);
    let adapters = pollster::block_on(instance.enumerate_adapters(wgpu::Backends::all()));
    if adapters.is_empty() {
        return BackendProbe::Unavailable(
            "no wgpu adapter (no Vulkan/Metal/DX12/GL driver found)".into(),
        );
    }
    let adapters = adapters
        .iter()
        .enumerate()
        .map(|(index, a)| {
            let info = a.get_info();
            let limits = a.limits();
            let features = a.features();
            WgpuAdapterCaps {
                index,
                name: info.name.clone(),
                backend: format!("{:?}", info.backend),
                device_type: format!("{:?}", info.device_type),
                driver: info.driver.clone(),
                driver_info: info.driver_info.clone(),
                max_storage_buffer_binding_size: limits.max_storage_buffer_binding_size,
                max_buffer_size: limits.max_buffer_size,
                max_compute_workgroup_storage_size: limits.max_compute_workgroup_storage_size,
                max_compute_invocations_per_workgroup: limits.max_compute_invocations_per_workgroup,
                subgroup: features.contains(wgpu::Features::SUBGROUP),
                shader_f16: features.contains(wgpu::Features::SHADER_F16),
                shader_int64: features.contains(wgpu::Features::SHADER_INT64),
                native_dot4: native_dot4(a).unwrap_or(false),
            }
        })
        .collect();
    BackendProbe::Available(WgpuCaps { adapters })
}

/// `Some(true)` if `dot4I8Packed` lowers to `OpSDot` on this adapter, `Some(false)` if it is
/// unpacked, `None` if that cannot be told.
pub(crate) fn native_dot4(adapter: &wgpu::Adapter) -> Option<bool> {
    match adapter.get_info().backend {
        wgpu::Backend::Vulkan => vulkan_integer_dot_product(adapter),
        wgpu::Backend::Metal | wgpu::Backend::Gl => Some(false),
        _ => None,
    }
}

#[cfg(any(
    windows,
    target_os = "linux",
    target_os = "android",
    target_os = "freebsd"
))]
fn vulkan_integer_dot_product(adapter: &wgpu::Adapter) -> Option<bool> {
    use ash::vk;
    // SAFETY: the hal adapter is only read (its physical device handle and instance), while
    // `adapter` keeps it alive.
    let hal = unsafe { adapter.as_hal::<wgpu::hal::api::Vulkan>() }?;
    let caps = hal.physical_device_capabilities();
    let api = caps.properties().api_version;
    if api < vk::API_VERSION_1_3
        && !caps.supports_extension(ash::khr::shader_integer_dot_product::NAME)
    {
        return Some(false);
    }
    let instance = hal.shared_instance();
    if instance.instance_api_version() < vk::API_VERSION_1_1 {
        return None;
    }
    let mut dot = vk::PhysicalDeviceShaderIntegerDotProductFeatures::default();
    let mut features2 = vk::PhysicalDeviceFeatures2::default().push_next(&mut dot);
    // SAFETY: a valid physical device of a live instance of API version >= 1.1, and a
    // correctly chained features struct (the same query wgpu-hal makes).
    unsafe {
        instance
            .raw_instance()
            .get_physical_device_features2(hal.raw_physical_device(), &mut features2)
    };
    Some(dot.shader_integer_dot_product != 0)
}

#[cfg(not(any(
    windows,
    target_os = "linux",
    target_os = "android",
    target_os = "freebsd"
)))]
fn vulkan_integer_dot_product(_adapter: &wgpu::Adapter) -> Option<bool> {
    None
}
