use super::*;

fn invalid_field(err: SettingsError) -> String {
    match err {
        SettingsError::Invalid { field, .. } => field,
        other => panic!("expected Invalid, got {other:?}"),
    }
}

#[test]
fn parses_the_compact_spec() {
    let d = DirectionSettings::parse("delay=25ms,jitter=2ms,loss=1%,rate=100mbit,queue=625000").unwrap();
    assert_eq!(d.delay, Duration::from_millis(25));
    assert_eq!(d.jitter, Duration::from_millis(2));
    assert!((d.loss - 0.01).abs() < 1e-12);
    assert_eq!(d.rate_bps, Some(100_000_000));
    assert_eq!(d.queue_bytes, Some(625_000));
    assert_eq!(d.limit, DEFAULT_LIMIT);
    assert!(!d.reorder);
}

#[test]
fn parses_gilbert_elliott_with_its_commas() {
    let d = DirectionSettings::parse("delay=1ms,ge=p:0.01,r:0.3,h:1.0,k:0,loss=0.5%").unwrap();
    let ge = d.gilbert_elliott.unwrap();
    assert_eq!((ge.p, ge.r, ge.loss_bad, ge.loss_good), (0.01, 0.3, 1.0, 0.0));
    assert!((d.loss - 0.005).abs() < 1e-12);
    let ge = DirectionSettings::parse("ge=p:1%,r:30%").unwrap().gilbert_elliott.unwrap();
    assert_eq!((ge.loss_bad, ge.loss_good), (1.0, 0.0), "h and k default to 1 and 0");
    assert!((ge.mean_loss() - 0.01 / 0.31).abs() < 1e-12);
}

#[test]
fn units() {
    let d = DirectionSettings::parse("delay=0.5s,jitter=250us,rate=512kbit,queue=64kib").unwrap();
    assert_eq!(d.delay, Duration::from_millis(500));
    assert_eq!(d.jitter, Duration::from_micros(250));
    assert_eq!(d.rate_bps, Some(512_000));
    assert_eq!(d.queue_bytes, Some(65_536));
    assert_eq!(DirectionSettings::parse("rate=1gbit").unwrap().rate_bps, Some(1_000_000_000));
    assert_eq!(DirectionSettings::parse("delay=0").unwrap().delay, Duration::ZERO);
}

#[test]
fn directions_can_differ() {
    let link = LinkSettings::parse("delay=25ms,loss=1%; ba: delay=5ms ; seed=7").unwrap();
    assert_eq!(link.a_to_b.delay, Duration::from_millis(25));
    assert_eq!(link.b_to_a.delay, Duration::from_millis(5));
    assert_eq!(link.b_to_a.loss, link.a_to_b.loss);
    assert_eq!(link.seed, 7);
    let link = LinkSettings::parse("ab:rate=10mbit").unwrap();
    assert_eq!((link.a_to_b.rate_bps, link.b_to_a.rate_bps), (Some(10_000_000), None));
    assert!(DirectionSettings::parse("ab:rate=10mbit").is_err());
    assert!(DirectionSettings::parse("ab:delay=0ms").is_err());
}

#[test]
fn display_round_trips() {
    for spec in ["delay=25ms,jitter=2ms,loss=1%,rate=100mbit,queue=625000", "delay=1ms,ge=p:0.01,r:0.3,reorder=on"] {
        let d = DirectionSettings::parse(spec).unwrap();
        assert_eq!(DirectionSettings::parse(&d.to_string()).unwrap(), d, "{d}");
    }
    for spec in ["delay=1500us,limit=20", "rate=1500kbit", "rate=1234bit", "rate=2gbit"] {
        let d = DirectionSettings::parse(spec).unwrap();
        assert_eq!(DirectionSettings::parse(&d.to_string()).unwrap(), d, "{d}");
    }
    let shown = DirectionSettings::parse("rate=100mbit,queue=1mb").unwrap().to_string();
    assert_eq!(shown, "delay=0ms,rate=100mbit,queue=1000000");
}

#[test]
fn parse_errors_name_the_key() {
    let cases: [(&str, &str); 8] = [
        ("delay=25", "delay"),
        ("delay=fast", "delay"),
        ("loss=120%", "loss"),
        ("rate=100mbps", "rate"),
        ("queue=10furlongs", "queue"),
        ("reorder=maybe", "reorder"),
        ("ge=p:0.1", "ge"),
        ("limit=-1", "limit"),
    ];
    for (spec, key) in cases {
        match LinkSettings::parse(spec) {
            Err(SettingsError::BadValue { key: k, .. }) => assert_eq!(k, key, "{spec}"),
            other => panic!("{spec}: {other:?}"),
        }
    }
    assert_eq!(LinkSettings::parse("dealy=1ms"), Err(SettingsError::UnknownKey { key: "dealy".into() }));
    assert_eq!(LinkSettings::parse("ge=p:0.1,r:0.2,x:1"), Err(SettingsError::UnknownKey { key: "ge.x".into() }));
    assert_eq!(LinkSettings::parse("delay"), Err(SettingsError::NotKeyValue { item: "delay".into() }));
    assert_eq!(LinkSettings::parse("loss=1%,loss=2%"), Err(SettingsError::Duplicate { key: "loss".into() }));
}

#[test]
fn validation_names_the_field() {
    assert_eq!(invalid_field(LinkSettings::parse("delay=1ms,jitter=2ms").unwrap_err()), "a_to_b.jitter");
    assert_eq!(invalid_field(LinkSettings::parse("queue=100000").unwrap_err()), "a_to_b.queue");
    assert_eq!(invalid_field(LinkSettings::parse("rate=1mbit,queue=100").unwrap_err()), "a_to_b.queue");
    assert_eq!(invalid_field(LinkSettings::parse("ba:rate=0bit").unwrap_err()), "b_to_a.rate");
    assert_eq!(invalid_field(LinkSettings::parse("ge=p:0.1,r:0").unwrap_err()), "a_to_b.ge.r");
    assert_eq!(invalid_field(LinkSettings::parse("limit=0").unwrap_err()), "a_to_b.limit");
    assert_eq!(invalid_field(LinkSettings::parse("delay=11s").unwrap_err()), "a_to_b.delay");
    let d = DirectionSettings { loss: 1.5, ..Default::default() };
    assert_eq!(invalid_field(d.validate().unwrap_err()), "loss");
}

#[test]
fn derived_values() {
    let d = DirectionSettings::parse("rate=100mbit").unwrap();
    assert_eq!(d.effective_queue_bytes(), Some(1_250_000), "100 ms at 100 Mbit/s");
    assert_eq!(DirectionSettings::parse("rate=100kbit").unwrap().effective_queue_bytes(), Some(16_384));
    assert_eq!(DirectionSettings::default().effective_queue_bytes(), None);
    let d = DirectionSettings::parse("loss=10%,ge=p:0.1,r:0.1,h:0.5,k:0").unwrap();
    assert!((d.mean_loss() - (1.0 - 0.9 * 0.75)).abs() < 1e-12);
}
