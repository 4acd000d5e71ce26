"""The DICOM PS3.15 Annex E Basic Application Confidentiality Profile as a table (pydicom does
not ship it): attribute keyword -> action.

Actions (Annex E letters): "X" remove, "Z" empty (type 2: kept, zero length), "D" replace with a
dummy (here: the patient's pseudonym), "U" replace the UID (consistently, see `uid_for`), "K" keep.
Where the standard allows several (X/Z, X/Z/D), the strictest that keeps the file valid is used.

Two options of PS3.15 are applied on top: Retain Longitudinal Temporal Information with Modified
Dates (every date not listed here is shifted by a per-patient number of days, so intervals stay
true) and Retain Device Identity is NOT (device serials and station names are removed). Rules by
VR catch what the table does not name: every UI value outside the DICOM root is remapped, every
PN not listed is emptied, every DA/DT not listed is shifted; private tags, curves (50xx) and
overlay data and comments (60xx,3000 / 60xx,4000) are removed.

The last lines of the removed list came from comparing coverage with pydicom's `deid` and
dicognito (benchmarks/deid_coverage.py): birth and death dates in an alternative calendar, the
patient-group sequences, an assigned location, a contact's name, device and detector IDs, and
the clinical-trial attributes that name the site or its ethics committee (the trial's own subject
and protocol IDs are pseudonyms already and stay).
"""

from __future__ import annotations

REMOVE, EMPTY, DUMMY, UID, KEEP = "X", "Z", "D", "U", "K"

# The UIDs of the standard itself (SOP classes, transfer syntaxes, coding schemes) identify nobody.
DICOM_ROOT = "1.2.840.10008."

_REMOVED = """
AcquisitionComments AcquisitionContextSequence AcquisitionDeviceProcessingDescription
AcquisitionProtocolDescription ActualHumanPerformersSequence AdditionalPatientHistory AdmissionID
AdmittingDate AdmittingDiagnosesCodeSequence AdmittingDiagnosesDescription AdmittingTime
AffectedSOPInstanceUID Allergies Arbitrary AuthorObserverSequence BranchOfService CassetteID
CommentsOnThePerformedProcedureStep ConfidentialityConstraintOnPatientDataDescription
ContentCreatorIdentificationCodeSequence ContentSequence ContributionDescription
CountryOfResidence CurrentPatientLocation CurveDate CurveTime CustodialOrganizationSequence
DataSetTrailingPadding DerivationDescription DetectorID DeviceSerialNumber DigitalSignatureUID
DigitalSignaturesSequence DischargeDiagnosisDescription DistributionAddress DistributionName
EthnicGroup ExpectedCompletionDateTime FrameComments GantryID GeneratorID GraphicAnnotationSequence
HumanPerformerName HumanPerformerOrganization IconImageSequence IdentifyingComments ImageComments
ImagePresentationComments ImagingServiceRequestComments Impressions InstanceCoercionDateTime
InstitutionAddress InstitutionCodeSequence InstitutionName InstitutionalDepartmentName
InstitutionalDepartmentTypeCodeSequence InsurancePlanIdentification
IntendedRecipientsOfResultsIdentificationSequence InterpretationApproverSequence
InterpretationAuthor InterpretationDiagnosisDescription InterpretationIDIssuer
InterpretationRecorder InterpretationText InterpretationTranscriber IssuerOfAdmissionID
IssuerOfAdmissionIDSequence IssuerOfPatientID IssuerOfPatientIDQualifiersSequence
IssuerOfServiceEpisodeID IssuerOfServiceEpisodeIDSequence LastMenstrualDate MAC MedicalAlerts
MedicalRecordLocator MilitaryRank ModifiedAttributesSequence ModifiedImageDescription
ModifyingDeviceID NameOfPhysiciansReadingStudy NamesOfIntendedRecipientsOfResults NetworkID
Occupation OperatorIdentificationSequence OperatorsName OrderCallbackPhoneNumber
OrderCallbackTelecomInformation OrderEnteredBy OrderEntererLocation OriginalAttributesSequence
OtherPatientIDs OtherPatientIDsSequence OtherPatientNames OverlayDate OverlayTime
ParticipantSequence PatientAddress PatientAge PatientBirthName PatientBirthTime PatientComments
PatientInstitutionResidence PatientInsurancePlanCodeSequence PatientMotherBirthName
PatientPrimaryLanguageCodeSequence PatientPrimaryLanguageModifierCodeSequence
PatientReligiousPreference PatientSexNeutered PatientSize PatientState PatientTelecomInformation
PatientTelephoneNumbers PatientTransportArrangements PatientWeight PerformedLocation
PerformedProcedureStepDescription PerformedProcedureStepEndDate PerformedProcedureStepEndDateTime
PerformedProcedureStepEndTime PerformedProcedureStepID PerformedProcedureStepStartDate
PerformedProcedureStepStartDateTime PerformedProcedureStepStartTime PerformedStationAETitle
PerformedStationGeographicLocationCodeSequence PerformedStationName
PerformedStationNameCodeSequence PerformingPhysicianIdentificationSequence PerformingPhysicianName
PersonAddress PersonIdentificationCodeSequence PersonName PersonTelecomInformation
PersonTelephoneNumbers PhysicianApprovingInterpretation PhysiciansOfRecord
PhysiciansOfRecordIdentificationSequence PhysiciansReadingStudyIdentificationSequence PlateID
PreMedication PregnancyStatus ProtocolName ReasonForStudy ReasonForTheImagingServiceRequest
ReasonForTheRequestedProcedure ReferencedDigitalSignatureSequence ReferencedPatientAliasSequence
ReferencedPatientPhotoSequence ReferencedPatientSequence ReferencedSOPInstanceMACSequence
ReferringPhysicianAddress ReferringPhysicianIdentificationSequence
ReferringPhysicianTelephoneNumbers RegionOfResidence RequestAttributesSequence
RequestedContrastAgent RequestedProcedureComments RequestedProcedureDescription
RequestedProcedureID RequestedProcedureLocation RequestingPhysician RequestingService
ResponsibleOrganization ResponsiblePerson ResponsiblePersonRole ResultsComments
ResultsDistributionListSequence ResultsIDIssuer ReviewerName ScheduledHumanPerformersSequence
ScheduledPatientInstitutionResidence ScheduledPerformingPhysicianIdentificationSequence
ScheduledPerformingPhysicianName ScheduledProcedureStepDescription ScheduledProcedureStepEndDate
ScheduledProcedureStepEndTime ScheduledProcedureStepID ScheduledProcedureStepLocation
ScheduledProcedureStepStartDate ScheduledProcedureStepStartTime ScheduledStationAETitle
ScheduledStationGeographicLocationCodeSequence ScheduledStationName
ScheduledStationNameCodeSequence ScheduledStudyLocation ScheduledStudyLocationAETitle
SeriesDescription ServiceEpisodeDescription ServiceEpisodeID SmokingStatus
SourceApplicationEntityTitle SpecialNeeds StationName StudyComments StudyDescription StudyIDIssuer
TextComments TextString TimezoneOffsetFromUTC TopicAuthor TopicKeywords TopicSubject TopicTitle
VerifyingOrganization VisitComments ReferencedPerformedProcedureStepSequence ReferencedStudySequence
PatientSpeciesDescription PatientBreedDescription ConsultingPhysicianName
ConsultingPhysicianIdentificationSequence DeviceDescription DeviceLabel LongDeviceDescription
UniqueDeviceIdentifier UDISequence SourceSerialNumber SecondaryCaptureDeviceID
ManufacturerDeviceIdentifier ReasonForVisit ReasonForVisitCodeSequence RouteOfAdmissions
StorageMediaFileSetID ReferencedRequestSequence RequestingPhysicianIdentificationSequence
EncryptedAttributesSequence
PatientBirthDateInAlternativeCalendar PatientDeathDateInAlternativeCalendar PatientAlternativeCalendar
SourcePatientGroupIdentificationSequence GroupOfPatientsIdentificationSequence AssignedLocation
ContactDisplayName DeviceID XRayDetectorID ClinicalTrialSiteID ClinicalTrialSiteName IssuerOfClinicalTrialSiteID
ClinicalTrialCoordinatingCenterName ClinicalTrialProtocolEthicsCommitteeName
ClinicalTrialProtocolEthicsCommitteeApprovalNumber
"""

_EMPTIED = """
AccessionNumber ContentCreatorName ContrastBolusAgent FillerOrderNumberImagingServiceRequest
PatientBirthDate PatientSex PlacerOrderNumberImagingServiceRequest ReferringPhysicianName StudyID
VerifyingObserverName VerifyingObserverIdentificationCodeSequence
"""

_DUMMIED = "PatientName PatientID"

_UIDS = """
ConcatenationUID ContextGroupExtensionCreatorUID CreatorVersionUID DeviceUID DimensionOrganizationUID
DoseReferenceUID FailedSOPInstanceUIDList FiducialUID FrameOfReferenceUID InstanceCreatorUID
IrradiationEventUID LargePaletteColorLookupTableUID MediaStorageSOPInstanceUID ObservationUID
PaletteColorLookupTableUID ReferencedFrameOfReferenceUID
ReferencedGeneralPurposeScheduledProcedureStepTransactionUID ReferencedSOPInstanceUID
ReferencedSOPInstanceUIDInFile RelatedFrameOfReferenceUID RequestedSOPInstanceUID
SeriesInstanceUID SOPInstanceUID StorageMediaFileSetUID StudyInstanceUID
SynchronizationFrameOfReferenceUID TemplateExtensionCreatorUID TemplateExtensionOrganizationUID
TransactionUID UID AssertionUID
"""

# Annex E cleans these sequences (X/Z/U*): kept, their items de-identified like the dataset,
# since the references inside them (source images) are what links a derived image to its series.
_KEPT = """
ReferencedImageSequence SourceImageSequence ReferencedSeriesSequence
"""


def _table() -> dict[str, str]:
    table: dict[str, str] = {}
    for words, action in ((_REMOVED, REMOVE), (_EMPTIED, EMPTY), (_DUMMIED, DUMMY), (_UIDS, UID),
                          (_KEPT, KEEP)):  # fmt: skip
        table.update(dict.fromkeys(words.split(), action))
    return table


BASIC_PROFILE: dict[str, str] = _table()


def action_for(keyword: str) -> str | None:
    """The profile's action for a standard attribute, or None where Annex E does not name it."""
    return BASIC_PROFILE.get(keyword)
