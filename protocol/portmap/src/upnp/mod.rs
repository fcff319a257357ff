//! UPnP IGD v1/v2: SSDP, device description, SOAP.
