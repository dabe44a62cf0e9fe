module konnq.dev/interop/kc036

go 1.23

require konnq.dev/interop/common v0.0.0

replace konnq.dev/interop/common => ../common
