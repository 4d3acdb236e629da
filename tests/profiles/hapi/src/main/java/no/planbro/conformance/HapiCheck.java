package no.planbro.conformance;

import ca.uhn.fhir.context.FhirContext;
import ca.uhn.fhir.context.support.DefaultProfileValidationSupport;
import ca.uhn.fhir.parser.IParser;
import ca.uhn.fhir.validation.FhirValidator;
import ca.uhn.fhir.validation.ResultSeverityEnum;
import ca.uhn.fhir.validation.SingleValidationMessage;
import ca.uhn.fhir.validation.ValidationOptions;
import ca.uhn.fhir.validation.ValidationResult;
import ca.uhn.hapi.converters.canonical.VersionCanonicalizer;
import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.SerializationFeature;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.DirectoryStream;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Comparator;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.regex.Pattern;
import org.hl7.fhir.common.hapi.validation.support.CommonCodeSystemsTerminologyService;
import org.hl7.fhir.common.hapi.validation.support.InMemoryTerminologyServerValidationSupport;
import org.hl7.fhir.common.hapi.validation.support.PrePopulatedValidationSupport;
import org.hl7.fhir.common.hapi.validation.support.SnapshotGeneratingValidationSupport;
import org.hl7.fhir.common.hapi.validation.support.ValidationSupportChain;
import org.hl7.fhir.common.hapi.validation.validator.FhirInstanceValidator;
import org.hl7.fhir.common.hapi.validation.validator.ProfileKnowledgeWorkerR5;
import org.hl7.fhir.common.hapi.validation.validator.WorkerContextValidationSupportAdapter;
import org.hl7.fhir.instance.model.api.IBaseResource;
import org.hl7.fhir.r4.model.CodeSystem;
import org.hl7.fhir.r4.model.ElementDefinition;
import org.hl7.fhir.r4.model.StructureDefinition;
import org.hl7.fhir.r4.model.ValueSet;
import org.hl7.fhir.r5.conformance.profile.ProfileUtilities;
import org.hl7.fhir.utilities.validation.ValidationMessage;

/**
 * Checks Planbro's conformance artefacts with the official HAPI FHIR validator, in one JVM run.
 *
 * <p>Usage: {@code HapiCheck <profiles dir>}. Loads every StructureDefinition, CodeSystem and
 * ValueSet of the directory, regenerates each StructureDefinition's snapshot from its
 * differential (reporting the generator's messages and how the result differs from the
 * committed snapshot), then validates every example ({@code examples/*.json}, against the
 * profiles it claims) and every broken variant ({@code examples/invalid/*.json}, against the
 * profile named in {@code examples/invalid/expectations.json}). Prints one JSON object.
 */
public final class HapiCheck {

  private final FhirContext ctx = FhirContext.forR4Cached();
  private final IParser parser = ctx.newJsonParser();
  private final PrePopulatedValidationSupport ours = new PrePopulatedValidationSupport(ctx);
  private final ValidationSupportChain chain =
      new ValidationSupportChain(
          ours,
          new DefaultProfileValidationSupport(ctx),
          new InMemoryTerminologyServerValidationSupport(ctx),
          new CommonCodeSystemsTerminologyService(ctx),
          new SnapshotGeneratingValidationSupport(ctx));

  private static final ObjectMapper MAPPER =
      new ObjectMapper().enable(SerializationFeature.INDENT_OUTPUT);

  private static final Pattern ARTEFACT =
      Pattern.compile("(StructureDefinition|CodeSystem|ValueSet)-.+\\.json");

  private HapiCheck() {}

  public static void main(String[] args) throws IOException {
    if (args.length != 1) {
      System.err.println("usage: HapiCheck <profiles dir>");
      System.exit(2);
    }
    long started = System.nanoTime();
    HapiCheck check = new HapiCheck();
    Path dir = Path.of(args[0]);
    Map<String, Object> out = new LinkedHashMap<>();
    List<StructureDefinition> committed = check.load(dir);
    out.put("loaded", committed.size());
    out.put("snapshots", check.snapshots(committed));
    FhirValidator validator = check.validator();
    out.put("examples", check.validateAll(validator, dir.resolve("examples"), null));
    Path invalid = dir.resolve("examples").resolve("invalid");
    String expectations = Files.readString(invalid.resolve("expectations.json"));
    out.put("invalid", check.validateAll(validator, invalid, expectations));
    out.put("seconds", (System.nanoTime() - started) / 1e9);
    System.out.println(MAPPER.writeValueAsString(out));
  }

  /** Loads the artefacts; StructureDefinitions go in without snapshot (HAPI makes its own). */
  private List<StructureDefinition> load(Path dir) throws IOException {
    List<StructureDefinition> sds = new ArrayList<>();
    for (Path file : jsonFiles(dir)) {
      if (!ARTEFACT.matcher(file.getFileName().toString()).matches()) {
        continue;
      }
      IBaseResource resource = parser.parseResource(Files.readString(file));
      if (resource instanceof StructureDefinition sd) {
        sds.add(sd);
        StructureDefinition differentialOnly = sd.copy();
        differentialOnly.setSnapshot(null);
        ours.addStructureDefinition(differentialOnly);
      } else if (resource instanceof CodeSystem cs) {
        ours.addCodeSystem(cs);
      } else if (resource instanceof ValueSet vs) {
        ours.addValueSet(vs);
      }
    }
    // Extensions first: profiles use them by type profile.
    sds.sort(Comparator.comparing((StructureDefinition sd) -> !"Extension".equals(sd.getType()))
        .thenComparing(StructureDefinition::getUrl));
    return sds;
  }

  private List<Object> snapshots(List<StructureDefinition> committed) {
    VersionCanonicalizer canonicalizer = new VersionCanonicalizer(ctx);
    WorkerContextValidationSupportAdapter worker = new WorkerContextValidationSupportAdapter(chain);
    List<Object> results = new ArrayList<>();
    for (StructureDefinition sd : committed) {
      Map<String, Object> result = new LinkedHashMap<>();
      result.put("url", sd.getUrl());
      List<Object> errors = new ArrayList<>();
      List<Object> warnings = new ArrayList<>();
      StructureDefinition generated = null;
      try {
        StructureDefinition input = sd.copy();
        input.setSnapshot(null);
        org.hl7.fhir.r5.model.StructureDefinition canonical =
            canonicalizer.structureDefinitionToCanonical(input);
        org.hl7.fhir.r5.model.StructureDefinition base =
            worker.fetchResource(
                org.hl7.fhir.r5.model.StructureDefinition.class, canonical.getBaseDefinition());
        List<ValidationMessage> messages = new ArrayList<>();
        new ProfileUtilities(worker, messages, new ProfileKnowledgeWorkerR5(ctx))
            .generateSnapshot(base, canonical, sd.getUrl(), sd.getUrl(), sd.getName());
        for (ValidationMessage m : messages) {
          boolean error =
              m.getLevel() == ValidationMessage.IssueSeverity.ERROR
                  || m.getLevel() == ValidationMessage.IssueSeverity.FATAL;
          (error ? errors : warnings).add(m.getLocation() + ": " + m.getMessage());
        }
        generated =
            (StructureDefinition) canonicalizer.structureDefinitionFromCanonical(canonical);
        ours.addStructureDefinition(generated);
      } catch (RuntimeException e) {
        errors.add("snapshot generation failed: " + e);
      }
      result.put("errors", errors);
      result.put("warnings", warnings);
      result.put(
          "differences", generated == null ? List.of() : compare(sd, generated));
      results.add(result);
    }
    return results;
  }

  /** Where HAPI's snapshot and the committed one disagree (element ids, cardinality, types). */
  private static List<Object> compare(StructureDefinition committed, StructureDefinition hapi) {
    Map<String, String> mine = summary(committed);
    Map<String, String> theirs = summary(hapi);
    List<Object> differences = new ArrayList<>();
    for (Map.Entry<String, String> e : mine.entrySet()) {
      String other = theirs.get(e.getKey());
      if (other == null) {
        differences.add(e.getKey() + ": only in the committed snapshot");
      } else if (!other.equals(e.getValue())) {
        differences.add(e.getKey() + ": committed " + e.getValue() + ", HAPI " + other);
      }
    }
    for (String id : theirs.keySet()) {
      if (!mine.containsKey(id)) {
        differences.add(id + ": only in HAPI's snapshot");
      }
    }
    return differences;
  }

  private static Map<String, String> summary(StructureDefinition sd) {
    Map<String, String> out = new LinkedHashMap<>();
    for (ElementDefinition e : sd.getSnapshot().getElement()) {
      List<String> types = new ArrayList<>();
      for (ElementDefinition.TypeRefComponent t : e.getType()) {
        List<String> targets = new ArrayList<>();
        t.getTargetProfile().forEach(p -> targets.add(p.getValue()));
        t.getProfile().forEach(p -> targets.add(p.getValue()));
        types.add(t.getWorkingCode() + (targets.isEmpty() ? "" : targets.toString()));
      }
      out.put(e.getId(), e.getMin() + ".." + e.getMax() + " " + types);
    }
    return out;
  }

  private FhirValidator validator() {
    FhirInstanceValidator instanceValidator = new FhirInstanceValidator(chain);
    instanceValidator.setAssumeValidRestReferences(true);
    FhirValidator validator = ctx.newValidator();
    validator.registerValidatorModule(instanceValidator);
    return validator;
  }

  /** Validates each JSON file of {@code dir}; {@code expectations} names the profile. */
  private List<Object> validateAll(FhirValidator validator, Path dir, String expectations)
      throws IOException {
    JsonNode expected = expectations == null ? null : MAPPER.readTree(expectations);
    List<Object> results = new ArrayList<>();
    for (Path file : jsonFiles(dir)) {
      String name = file.getFileName().toString();
      if (name.equals("expectations.json")) {
        continue;
      }
      ValidationOptions options = new ValidationOptions();
      String profile = null;
      if (expected != null && expected.has(name)) {
        profile = expected.get(name).get("profile").asText();
        options.addProfile(profile);
      }
      String text = Files.readString(file, StandardCharsets.UTF_8);
      ValidationResult result = validator.validateWithResult(text, options);
      List<Object> errors = new ArrayList<>();
      List<Object> warnings = new ArrayList<>();
      for (SingleValidationMessage m : result.getMessages()) {
        ResultSeverityEnum severity = m.getSeverity();
        if (severity == ResultSeverityEnum.ERROR || severity == ResultSeverityEnum.FATAL) {
          errors.add(m.getLocationString() + ": " + m.getMessage());
        } else if (severity == ResultSeverityEnum.WARNING) {
          warnings.add(m.getLocationString() + ": " + m.getMessage());
        }
      }
      Map<String, Object> r = new LinkedHashMap<>();
      r.put("file", name);
      r.put("profile", profile);
      r.put("errors", errors);
      r.put("warnings", warnings);
      results.add(r);
    }
    return results;
  }

  private static List<Path> jsonFiles(Path dir) throws IOException {
    List<Path> files = new ArrayList<>();
    try (DirectoryStream<Path> stream = Files.newDirectoryStream(dir, "*.json")) {
      stream.forEach(files::add);
    }
    files.sort(Comparator.naturalOrder());
    return files;
  }
}
