//! The built XDP object against `lb-common`: every map and program the user side names exists
//! in the object under that name, and the object has nothing the user side does not know.
//! Parses the ELF only: no privileges needed.

use std::collections::BTreeSet;

use lb_common::maps::{
    ALL, AYA_LOGS, BENCH_MAPS, BENCH_PROGRAMS, PROG_DELIVER6_IN, PROG_DELIVER6_IN_TC,
    PROG_DELIVER6_OUT, PROG_DELIVER6_OUT_TC, PROG_ERROR6_IN, PROG_ERROR6_IN_TC, PROG_ERROR6_OUT,
    PROG_ERROR6_OUT_TC, PROG_INGRESS, PROG_INGRESS_TC, PROG_INGRESS6, PROG_INGRESS6_TC,
    PROG_RETURN, PROG_RETURN_TC, PROG_RETURN6, PROG_RETURN6_TC, PROG_TOO_BIG6, PROG_TOO_BIG6_TC,
};

#[test]
fn object_maps_and_programs_match_lb_common() {
    let object = match lb_user::datapath::object() {
        Ok(o) => o,
        Err(e) => {
            lb_testkit::ci::skip(
                lb_testkit::ci::Skip::Test {
                    name: "object_maps_and_programs_match_lb_common".into(),
                },
                &e.to_string(),
            );
            return;
        }
    };
    let obj = aya_obj::Object::parse(object).expect("the object parses");
    let maps: BTreeSet<&str> = obj
        .maps
        .keys()
        .map(String::as_str)
        .filter(|m| !m.starts_with('.'))
        .collect();
    let want: BTreeSet<&str> = ALL
        .iter()
        .chain(&BENCH_MAPS)
        .copied()
        .chain([AYA_LOGS])
        .collect();
    assert_eq!(maps, want, "maps in the object vs lb_common::maps::ALL");
    let progs: BTreeSet<&str> = obj.programs.keys().map(String::as_str).collect();
    let want: BTreeSet<&str> = [
        PROG_INGRESS,
        PROG_RETURN,
        PROG_INGRESS_TC,
        PROG_RETURN_TC,
        PROG_INGRESS6,
        PROG_RETURN6,
        PROG_INGRESS6_TC,
        PROG_RETURN6_TC,
        PROG_DELIVER6_IN,
        PROG_DELIVER6_OUT,
        PROG_DELIVER6_IN_TC,
        PROG_DELIVER6_OUT_TC,
        PROG_ERROR6_IN,
        PROG_ERROR6_IN_TC,
        PROG_ERROR6_OUT,
        PROG_ERROR6_OUT_TC,
        PROG_TOO_BIG6,
        PROG_TOO_BIG6_TC,
        PROG_ERROR6_IN,
        PROG_ERROR6_OUT,
        PROG_ERROR6_IN_TC,
        PROG_ERROR6_OUT_TC,
        PROG_TOO_BIG6,
        PROG_TOO_BIG6_TC,
        PROG_TOO_BIG6,
        PROG_TOO_BIG6_TC,
    ]
    .into_iter()
    .chain(BENCH_PROGRAMS)
    .collect();
    assert_eq!(progs, want);
}
