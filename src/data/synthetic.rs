//! A built-in, unbalanced, Chinese EMR-like data set, generated deterministically: 15 disease
//! classes with Zipf-like counts (from a few thousand records down to a few dozen), each record
//! a sentence of the class's own symptoms, findings and treatments mixed with shared clinical
//! phrases and some terms of other classes, so the task is learnable but not trivial.

use super::dataset::Example;
use crate::rng::Rng;

/// (class, its own terms): symptoms, findings and treatments written for the project.
const CLASSES: [(&str, &[&str]); 15] = [
    (
        "高血压",
        &[
            "头晕",
            "头痛",
            "血压升高",
            "收缩压160",
            "氨氯地平",
            "缬沙坦",
            "颈部僵硬",
            "眼底动脉硬化",
        ],
    ),
    (
        "2型糖尿病",
        &[
            "多饮",
            "多尿",
            "体重下降",
            "空腹血糖升高",
            "糖化血红蛋白8.2%",
            "二甲双胍",
            "胰岛素",
            "尿糖阳性",
        ],
    ),
    (
        "冠心病",
        &[
            "胸闷",
            "心前区疼痛",
            "活动后气促",
            "ST段压低",
            "冠脉造影狭窄",
            "阿司匹林",
            "硝酸甘油",
            "支架植入",
        ],
    ),
    (
        "慢性阻塞性肺疾病",
        &[
            "咳嗽",
            "咳痰",
            "喘息",
            "桶状胸",
            "肺功能下降",
            "沙丁胺醇",
            "噻托溴铵",
            "长期吸烟",
        ],
    ),
    (
        "社区获得性肺炎",
        &[
            "发热",
            "寒战",
            "咳黄痰",
            "湿啰音",
            "肺部斑片影",
            "白细胞升高",
            "头孢曲松",
            "阿奇霉素",
        ],
    ),
    (
        "脑梗死",
        &[
            "一侧肢体无力",
            "言语含糊",
            "口角歪斜",
            "头颅MRI高信号",
            "溶栓",
            "阿替普酶",
            "偏瘫",
            "吞咽困难",
        ],
    ),
    (
        "慢性肾脏病",
        &[
            "水肿",
            "夜尿增多",
            "血肌酐升高",
            "蛋白尿",
            "肾小球滤过率下降",
            "贫血",
            "透析",
            "低盐饮食",
        ],
    ),
    (
        "类风湿关节炎",
        &[
            "晨僵",
            "关节肿痛",
            "对称性小关节",
            "类风湿因子阳性",
            "抗CCP抗体",
            "甲氨蝶呤",
            "关节畸形",
            "血沉增快",
        ],
    ),
    (
        "胃食管反流病",
        &[
            "反酸",
            "烧心",
            "胸骨后灼痛",
            "胃镜食管炎",
            "奥美拉唑",
            "夜间呛咳",
            "嗳气",
            "睡前进食",
        ],
    ),
    (
        "缺铁性贫血",
        &[
            "乏力",
            "面色苍白",
            "血红蛋白降低",
            "铁蛋白降低",
            "小细胞低色素",
            "口服铁剂",
            "月经过多",
            "心悸",
        ],
    ),
    (
        "甲状腺功能亢进症",
        &[
            "怕热",
            "多汗",
            "心率增快",
            "甲状腺肿大",
            "FT4升高",
            "TSH降低",
            "甲巯咪唑",
            "突眼",
        ],
    ),
    (
        "急性阑尾炎",
        &[
            "转移性右下腹痛",
            "麦氏点压痛",
            "反跳痛",
            "恶心呕吐",
            "阑尾增粗",
            "阑尾切除术",
            "中性粒细胞升高",
            "低热",
        ],
    ),
    (
        "帕金森病",
        &[
            "静止性震颤",
            "运动迟缓",
            "肌强直",
            "小碎步",
            "面具脸",
            "多巴丝肼",
            "便秘",
            "嗅觉减退",
        ],
    ),
    (
        "痛风",
        &[
            "第一跖趾关节红肿",
            "夜间剧痛",
            "血尿酸升高",
            "痛风石",
            "秋水仙碱",
            "非布司他",
            "饮酒",
            "高嘌呤饮食",
        ],
    ),
    (
        "系统性红斑狼疮",
        &[
            "面部蝶形红斑",
            "光过敏",
            "口腔溃疡",
            "抗核抗体阳性",
            "抗dsDNA抗体",
            "补体降低",
            "羟氯喹",
            "泼尼松",
        ],
    ),
];

const SHARED: [&str; 12] = [
    "患者",
    "入院",
    "既往体健",
    "否认药物过敏",
    "查体",
    "精神可",
    "饮食睡眠一般",
    "大小便正常",
    "予对症治疗",
    "病情稳定",
    "门诊随访",
    "家族史无特殊",
];

/// Records of class c: Zipf-like, 2600 / (c + 1)^1.4, at least 30, times `scale`.
fn count(c: usize, scale: f64) -> usize {
    ((2600.0 / ((c + 1) as f64).powf(1.4)).max(30.0) * scale)
        .round()
        .max(2.0) as usize
}

/// The class names, in the order they are generated.
pub fn class_names() -> Vec<String> {
    CLASSES.iter().map(|c| c.0.to_string()).collect()
}

/// Generates the set; `scale` shrinks it (1.0: about 5,900 records). The same seed gives the
/// same records.
pub fn generate(seed: u64, scale: f64) -> Vec<Example> {
    let mut rng = Rng::new(seed);
    let pick = |n: usize, rng: &mut Rng| (rng.next_u64() % n as u64) as usize;
    let mut out = Vec::new();
    for (c, (name, terms)) in CLASSES.iter().enumerate() {
        for _ in 0..count(c, scale) {
            let mut parts: Vec<String> = vec![SHARED[pick(SHARED.len(), &mut rng)].to_string()];
            let words = 3 + pick(4, &mut rng);
            for _ in 0..words {
                let r = rng.uniform();
                let term = if r < 0.6 {
                    terms[pick(terms.len(), &mut rng)]
                } else if r < 0.8 {
                    let other = CLASSES[pick(CLASSES.len(), &mut rng)].1;
                    other[pick(other.len(), &mut rng)]
                } else {
                    SHARED[pick(SHARED.len(), &mut rng)]
                };
                parts.push(term.to_string());
            }
            out.push(Example {
                text: parts.join("，") + "。",
                label: name.to_string(),
            });
        }
    }
    // A fixed shuffle, so files written from it do not come sorted by class.
    rng.shuffle(&mut out);
    out
}

/// The long-record set's subtypes: each disease comes as a first visit or a relapse, told apart
/// only by the closing summary at the record's end.
const SUBTYPES: [(&str, &[&str]); 2] = [
    ("初诊", &["首次发现", "初次就诊", "新发病例"]),
    ("复诊", &["病情复发", "再次入院", "既往已确诊"]),
];

/// The long-record set's class names: each disease and subtype, e.g. `高血压（复诊）`.
pub fn long_class_names() -> Vec<String> {
    CLASSES
        .iter()
        .flat_map(|c| SUBTYPES.iter().map(move |s| format!("{}（{}）", c.0, s.0)))
        .collect()
}

/// Records of long-set class c: 600 / (c + 1)^1.3, at least 2, times `scale` (600 down to 7
/// per class at scale 1, about 1,650 records).
fn long_count(c: usize, scale: f64) -> usize {
    ((600.0 / ((c + 1) as f64).powf(1.3)).max(2.0) * scale)
        .round()
        .max(2.0) as usize
}

/// Long records, as EMRs are: 30 classes (each disease as a first visit or a relapse), 2 to 600
/// records per class, a few hundred characters each — the disease's terms at the start, a long
/// course of shared phrases and other diseases' terms in the middle, and a closing summary that
/// alone names the subtype. Truncating to the head loses the subtype; keeping the tail does
/// not. The same seed gives the same records.
pub fn generate_long(seed: u64, scale: f64) -> Vec<Example> {
    let mut rng = Rng::new(seed ^ 0x4c4f_4e47);
    let pick = |n: usize, rng: &mut Rng| (rng.next_u64() % n as u64) as usize;
    let mut out = Vec::new();
    let names = long_class_names();
    for (c, name) in names.iter().enumerate() {
        let (disease, subtype) = (CLASSES[c / 2], SUBTYPES[c % 2]);
        for _ in 0..long_count(c, scale) {
            let mut parts: Vec<&str> = vec![SHARED[pick(SHARED.len(), &mut rng)]];
            for _ in 0..3 + pick(3, &mut rng) {
                parts.push(disease.1[pick(disease.1.len(), &mut rng)]);
            }
            for _ in 0..40 + pick(50, &mut rng) {
                let r = rng.uniform();
                parts.push(if r < 0.5 {
                    SHARED[pick(SHARED.len(), &mut rng)]
                } else if r < 0.8 {
                    let other = CLASSES[pick(CLASSES.len(), &mut rng)].1;
                    other[pick(other.len(), &mut rng)]
                } else {
                    disease.1[pick(disease.1.len(), &mut rng)]
                });
            }
            parts.push("出院小结");
            parts.push(subtype.1[pick(subtype.1.len(), &mut rng)]);
            parts.push(disease.0);
            out.push(Example {
                text: parts.join("，") + "。",
                label: name.clone(),
            });
        }
    }
    rng.shuffle(&mut out);
    out
}
