//! Hand-written declarations of the Triton C API (TRITONBACKEND 1.19 / TRITONSERVER 1.34, release 24.10) that
//! this backend calls. No link directive: the symbols resolve from the already-loaded `libtritonserver` when
//! Triton `dlopen`s us. `tests/e2e/test_symbols.py` checks every `TRITON*` name below is exported by the server.
#![allow(unsafe_code)]
#![allow(non_camel_case_types, dead_code)]
use std::ffi::{c_char, c_void};

macro_rules! opaque {
    ($($name:ident),*) => { $( #[repr(C)] pub struct $name { _p: [u8; 0] } )* };
}
opaque!(
    TRITONSERVER_Error,
    TRITONSERVER_Message,
    TRITONSERVER_MetricFamily,
    TRITONSERVER_Metric,
    TRITONSERVER_MetricArgs,
    TRITONSERVER_Parameter,
    TRITONBACKEND_Backend,
    TRITONBACKEND_Model,
    TRITONBACKEND_ModelInstance,
    TRITONBACKEND_Request,
    TRITONBACKEND_Input,
    TRITONBACKEND_Response,
    TRITONBACKEND_ResponseFactory,
    TRITONBACKEND_Output
);

pub type Err = *mut TRITONSERVER_Error;

// TRITONSERVER_Error_Code
pub const ERROR_UNKNOWN: u32 = 0;
pub const ERROR_INTERNAL: u32 = 1;
pub const ERROR_NOT_FOUND: u32 = 2;
pub const ERROR_INVALID_ARG: u32 = 3;
pub const ERROR_UNAVAILABLE: u32 = 4;
pub const ERROR_UNSUPPORTED: u32 = 5;
pub const ERROR_ALREADY_EXISTS: u32 = 6;
pub const ERROR_CANCELLED: u32 = 7;

// TRITONSERVER_DataType
pub const TYPE_BOOL: u32 = 1;
pub const TYPE_UINT8: u32 = 2;
pub const TYPE_UINT16: u32 = 3;
pub const TYPE_UINT32: u32 = 4;
pub const TYPE_UINT64: u32 = 5;
pub const TYPE_INT8: u32 = 6;
pub const TYPE_INT16: u32 = 7;
pub const TYPE_INT32: u32 = 8;
pub const TYPE_INT64: u32 = 9;
pub const TYPE_FP16: u32 = 10;
pub const TYPE_FP32: u32 = 11;
pub const TYPE_FP64: u32 = 12;
pub const TYPE_BYTES: u32 = 13;
pub const TYPE_BF16: u32 = 14;

// TRITONSERVER_MemoryType
pub const MEMORY_CPU: u32 = 0;
pub const MEMORY_CPU_PINNED: u32 = 1;
pub const MEMORY_GPU: u32 = 2;

// TRITONSERVER_LogLevel
pub const LOG_INFO: u32 = 0;
pub const LOG_WARN: u32 = 1;
pub const LOG_ERROR: u32 = 2;
pub const LOG_VERBOSE: u32 = 3;

// TRITONSERVER_MetricKind
pub const METRIC_COUNTER: u32 = 0;
pub const METRIC_GAUGE: u32 = 1;
pub const METRIC_HISTOGRAM: u32 = 2;

// TRITONSERVER_ParameterType
pub const PARAMETER_STRING: u32 = 0;

// TRITONSERVER_ResponseCompleteFlag / TRITONSERVER_RequestReleaseFlag
pub const RESPONSE_COMPLETE_FINAL: u32 = 1;
pub const REQUEST_RELEASE_ALL: u32 = 1;

unsafe extern "C" {
    pub fn TRITONSERVER_ErrorNew(code: u32, msg: *const c_char) -> Err;
    pub fn TRITONSERVER_ErrorDelete(error: Err);
    pub fn TRITONSERVER_ErrorCode(error: Err) -> u32;
    pub fn TRITONSERVER_ErrorMessage(error: Err) -> *const c_char;

    pub fn TRITONSERVER_MessageNewFromSerializedJson(
        msg: *mut *mut TRITONSERVER_Message,
        base: *const c_char,
        byte_size: usize,
    ) -> Err;
    pub fn TRITONSERVER_MessageDelete(msg: *mut TRITONSERVER_Message) -> Err;
    pub fn TRITONSERVER_MessageSerializeToJson(
        msg: *mut TRITONSERVER_Message,
        base: *mut *const c_char,
        byte_size: *mut usize,
    ) -> Err;

    pub fn TRITONSERVER_LogIsEnabled(level: u32) -> bool;
    pub fn TRITONSERVER_LogMessage(level: u32, filename: *const c_char, line: i32, msg: *const c_char) -> Err;

    pub fn TRITONSERVER_ParameterNew(name: *const c_char, ty: u32, value: *const c_void)
    -> *mut TRITONSERVER_Parameter;
    pub fn TRITONSERVER_ParameterDelete(param: *mut TRITONSERVER_Parameter);

    pub fn TRITONSERVER_MetricFamilyNew(
        family: *mut *mut TRITONSERVER_MetricFamily,
        kind: u32,
        name: *const c_char,
        description: *const c_char,
    ) -> Err;
    pub fn TRITONSERVER_MetricFamilyDelete(family: *mut TRITONSERVER_MetricFamily) -> Err;
    pub fn TRITONSERVER_MetricNew(
        metric: *mut *mut TRITONSERVER_Metric,
        family: *mut TRITONSERVER_MetricFamily,
        labels: *const *const TRITONSERVER_Parameter,
        label_count: u64,
    ) -> Err;
    pub fn TRITONSERVER_MetricDelete(metric: *mut TRITONSERVER_Metric) -> Err;
    pub fn TRITONSERVER_MetricIncrement(metric: *mut TRITONSERVER_Metric, value: f64) -> Err;
    pub fn TRITONSERVER_MetricSet(metric: *mut TRITONSERVER_Metric, value: f64) -> Err;
    pub fn TRITONSERVER_MetricArgsNew(args: *mut *mut TRITONSERVER_MetricArgs) -> Err;
    pub fn TRITONSERVER_MetricArgsSetHistogram(
        args: *mut TRITONSERVER_MetricArgs,
        buckets: *const f64,
        buckets_count: u64,
    ) -> Err;
    pub fn TRITONSERVER_MetricArgsDelete(args: *mut TRITONSERVER_MetricArgs) -> Err;
    pub fn TRITONSERVER_MetricNewWithArgs(
        metric: *mut *mut TRITONSERVER_Metric,
        family: *mut TRITONSERVER_MetricFamily,
        labels: *const *const TRITONSERVER_Parameter,
        label_count: u64,
        args: *const TRITONSERVER_MetricArgs,
    ) -> Err;
    pub fn TRITONSERVER_MetricObserve(metric: *mut TRITONSERVER_Metric, value: f64) -> Err;

    pub fn TRITONBACKEND_ApiVersion(major: *mut u32, minor: *mut u32) -> Err;
    pub fn TRITONBACKEND_BackendName(backend: *mut TRITONBACKEND_Backend, name: *mut *const c_char) -> Err;

    pub fn TRITONBACKEND_ModelName(model: *mut TRITONBACKEND_Model, name: *mut *const c_char) -> Err;
    pub fn TRITONBACKEND_ModelVersion(model: *mut TRITONBACKEND_Model, version: *mut u64) -> Err;
    pub fn TRITONBACKEND_ModelRepository(
        model: *mut TRITONBACKEND_Model,
        artifact_type: *mut u32,
        location: *mut *const c_char,
    ) -> Err;
    pub fn TRITONBACKEND_ModelConfig(
        model: *mut TRITONBACKEND_Model,
        config_version: u32,
        config: *mut *mut TRITONSERVER_Message,
    ) -> Err;
    pub fn TRITONBACKEND_ModelAutoCompleteConfig(model: *mut TRITONBACKEND_Model, auto_complete: *mut bool) -> Err;
    pub fn TRITONBACKEND_ModelSetConfig(
        model: *mut TRITONBACKEND_Model,
        config_version: u32,
        config: *mut TRITONSERVER_Message,
    ) -> Err;
    pub fn TRITONBACKEND_ModelState(model: *mut TRITONBACKEND_Model, state: *mut *mut c_void) -> Err;
    pub fn TRITONBACKEND_ModelSetState(model: *mut TRITONBACKEND_Model, state: *mut c_void) -> Err;

    pub fn TRITONBACKEND_ModelInstanceModel(
        instance: *mut TRITONBACKEND_ModelInstance,
        model: *mut *mut TRITONBACKEND_Model,
    ) -> Err;
    pub fn TRITONBACKEND_ModelInstanceState(instance: *mut TRITONBACKEND_ModelInstance, state: *mut *mut c_void)
    -> Err;
    pub fn TRITONBACKEND_ModelInstanceSetState(instance: *mut TRITONBACKEND_ModelInstance, state: *mut c_void) -> Err;
    pub fn TRITONBACKEND_ModelInstanceReportStatistics(
        instance: *mut TRITONBACKEND_ModelInstance,
        request: *mut TRITONBACKEND_Request,
        success: bool,
        exec_start_ns: u64,
        compute_start_ns: u64,
        compute_end_ns: u64,
        exec_end_ns: u64,
    ) -> Err;
    pub fn TRITONBACKEND_ModelInstanceReportBatchStatistics(
        instance: *mut TRITONBACKEND_ModelInstance,
        batch_size: u64,
        exec_start_ns: u64,
        compute_start_ns: u64,
        compute_end_ns: u64,
        exec_end_ns: u64,
    ) -> Err;

    pub fn TRITONBACKEND_RequestId(request: *mut TRITONBACKEND_Request, id: *mut *const c_char) -> Err;
    pub fn TRITONBACKEND_RequestInputCount(request: *mut TRITONBACKEND_Request, count: *mut u32) -> Err;
    pub fn TRITONBACKEND_RequestInputByIndex(
        request: *mut TRITONBACKEND_Request,
        index: u32,
        input: *mut *mut TRITONBACKEND_Input,
    ) -> Err;
    pub fn TRITONBACKEND_RequestOutputCount(request: *mut TRITONBACKEND_Request, count: *mut u32) -> Err;
    pub fn TRITONBACKEND_RequestOutputName(
        request: *mut TRITONBACKEND_Request,
        index: u32,
        name: *mut *const c_char,
    ) -> Err;
    pub fn TRITONBACKEND_RequestRelease(request: *mut TRITONBACKEND_Request, release_flags: u32) -> Err;

    pub fn TRITONBACKEND_InputProperties(
        input: *mut TRITONBACKEND_Input,
        name: *mut *const c_char,
        datatype: *mut u32,
        shape: *mut *const i64,
        dims_count: *mut u32,
        byte_size: *mut u64,
        buffer_count: *mut u32,
    ) -> Err;
    pub fn TRITONBACKEND_InputBuffer(
        input: *mut TRITONBACKEND_Input,
        index: u32,
        buffer: *mut *const c_void,
        buffer_byte_size: *mut u64,
        memory_type: *mut u32,
        memory_type_id: *mut i64,
    ) -> Err;

    pub fn TRITONBACKEND_ResponseFactoryNew(
        factory: *mut *mut TRITONBACKEND_ResponseFactory,
        request: *mut TRITONBACKEND_Request,
    ) -> Err;
    pub fn TRITONBACKEND_ResponseFactoryDelete(factory: *mut TRITONBACKEND_ResponseFactory) -> Err;
    pub fn TRITONBACKEND_ResponseFactorySendFlags(factory: *mut TRITONBACKEND_ResponseFactory, send_flags: u32) -> Err;
    pub fn TRITONBACKEND_ResponseFactoryIsCancelled(
        factory: *mut TRITONBACKEND_ResponseFactory,
        cancelled: *mut bool,
    ) -> Err;

    pub fn TRITONBACKEND_ResponseNew(
        response: *mut *mut TRITONBACKEND_Response,
        request: *mut TRITONBACKEND_Request,
    ) -> Err;
    pub fn TRITONBACKEND_ResponseNewFromFactory(
        response: *mut *mut TRITONBACKEND_Response,
        factory: *mut TRITONBACKEND_ResponseFactory,
    ) -> Err;
    pub fn TRITONBACKEND_ResponseDelete(response: *mut TRITONBACKEND_Response) -> Err;
    pub fn TRITONBACKEND_ResponseOutput(
        response: *mut TRITONBACKEND_Response,
        output: *mut *mut TRITONBACKEND_Output,
        name: *const c_char,
        datatype: u32,
        shape: *const i64,
        dims_count: u32,
    ) -> Err;
    pub fn TRITONBACKEND_OutputBuffer(
        output: *mut TRITONBACKEND_Output,
        buffer: *mut *mut c_void,
        buffer_byte_size: u64,
        memory_type: *mut u32,
        memory_type_id: *mut i64,
    ) -> Err;
    pub fn TRITONBACKEND_ResponseSend(response: *mut TRITONBACKEND_Response, send_flags: u32, error: Err) -> Err;
}
